"""User-facing errors.

Anything a user can fix (a bad flag, a missing file, a malformed preset) raises :class:`UserError`.
The CLI prints its message as one line and exits with code 2; ``--debug`` shows the traceback.
"""


class UserError(Exception):
    """An error caused by the user's input, with a one-line message that says what and how to fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class EpisodeError(UserError):
    """A :class:`UserError` about one episode of a batch handed to a learner or an FSL head.

    ``template`` holds ``{episode}``; ``episode`` is the position in that batch. The FSL runner
    re-raises it with :meth:`shifted` so the message names the global episode index.
    """

    def __init__(self, template: str, episode: int):
        self.template = template
        self.episode = int(episode)
        super().__init__(template.format(episode=self.episode))

    def shifted(self, offset: int) -> "EpisodeError":
        return EpisodeError(self.template, self.episode + int(offset))
