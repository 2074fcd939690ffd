"""``dvla_rl`` - DVLA-RL: Dual-Level Vision-Language Alignment with Reinforcement Learning gating
for few-shot learning (ICLR 2026). The authors released no code; this is fsbench's implementation
from the paper, with the backbone and protocol of its predecessor VT-FSL.

Modules: :mod:`.semantics` (DSC: attribute sources, progressive top-k, descriptions, cached text
features), :mod:`.text` (text encoders), :mod:`.rla` (RL-gated attention, Beta / categorical
policies, REINFORCE), :mod:`.backbone` (staged backbones), :mod:`.learner` (the learner).

Where the paper is silent, fsbench chose (each also documented where it is implemented):

1. One alpha per support image and stage (state from that image's tokens and its class's text).
2. Queries go through the backbone without text (VT-FSL's protocol; their class is unknown).
3. Text tokens = the k selected attributes + the description (k + 1 rows), projected per stage by
   a bias-free linear map ``t2i``; RLA runs once at the start of stages 2 and 3, its P fused tokens
   are appended for the whole stage and removed at its end.
4. ``W_q`` shared by both paths (as Eq. 5-6 write it); no output projection; ``rla.heads`` heads.
5. ``t*`` = the text feature of "A photo of a {CLASS}"; ``U`` is fitted by ``1 - cos(U sg(GAP(H)),
   t*)`` (H detached, so only U learns from it).
6. ``dAcc`` (``rla.delta_acc``): ``previous`` = this episode's query accuracy minus the previous
   episode's (Acc_t - Acc_{t-1}, the paper's notation, default) or ``counterfactual`` = accuracy
   with the gated prototypes minus accuracy with text-free prototypes of the same episode.
7. EMA baseline momentum 0.9 per stage; the policy state is detached; the policy MLP has one
   hidden layer of 64 tanh units and starts at p = 0.5; p is kept in [0.01, 0.99].
8. Progressive top-k extends the template cumulatively; ties go to the earlier candidate.
9. The description, when the source has none: "A {CLASS}, which has a1, a2 and a3."
10. Pretraining: AdamW + one-cycle cosine, label smoothing 0.1, no mixup/cutmix on CPU presets.
"""
from . import learner  # noqa: F401  (registration: method ``dvla_rl``)
