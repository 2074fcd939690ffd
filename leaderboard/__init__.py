"""Published numbers, submissions, rendering and regression."""
