"""rlhf_lessons: the package the rlhf-lessons notebooks import.

Every lesson's algorithm lives here, one module per idea; the notebooks explain, configure, call
these functions, plot, and assert the lesson's claim. Submodules are imported on demand so that
``import rlhf_lessons`` stays cheap (the language-model parts pull in transformers).

Where each lesson's code is (the folders follow the syllabus):

- ``rl/`` - lessons 01-03: ``cartpole`` (environment and networks), ``reinforce`` (01),
  ``ppo`` and ``naive_ppo`` (02), ``advantages`` (GAE, baselines, RLOO/GRPO advantages),
  ``batched`` (a lesson's seeds trained as one computation), ``runs`` (cached seed runs),
  ``kl`` (03: exact KL and the k1/k2/k3 estimators).
- ``rewards/`` - lessons 04 and 08: ``preference_data`` (the shipped rankings),
  ``reward_losses`` (Bradley-Terry, K-wise, Plackett-Luce), ``reward_model`` and
  ``frozen_bottom`` (training a MiniLM reward model), ``reward_io`` (save/load),
  ``label_studio`` (annotation import and agreement), ``pairrm`` and ``pairrm_eval`` (08),
  ``blender_compat`` (llm-blender on transformers 5).
- ``alignment/`` - lessons 05-07 and 10-11: ``rollouts``, ``kl_control``, ``lm_ppo`` (05 PPO),
  ``rloo_grpo`` (05 RLOO and GRPO; ``grpo_trl_variants`` holds TRL's averaging variants),
  ``dpo_losses``, ``dpo_data``, ``dpo``, ``lora`` (06), ``simpo`` (07), ``sft``,
  ``self_rewarding``, ``spin``, ``pipeline`` (10), ``alol_losses``, ``alol_data``, ``alol`` (11).
- ``judges/`` - lesson 09: ``prompts`` (templates and parsers), ``llm_judge``, ``judge_bias``,
  ``checks``, ``planted`` (judges with known biases), ``attacks`` (verbosity), ``tuning`` and
  ``frozen_bottom`` (a fine-tuned judge), ``budget`` (its training budget, chosen on validation
  rankings), ``verdict_pairs`` (both orders -> preference pairs).
- ``review_world/`` - the known-reward testbed of lessons 05-11: ``grammar`` (the review
  language), ``tiny_lm`` (its 0.5M-parameter policy), ``true_reward``, ``preferences``,
  ``splits`` (train / validation / test prompts), ``evaluation``, ``frontier``, ``self_judge``.
- ``trl_runs/`` - the same runs through TRL's trainers, side by side (``train_with_trl``).
- ``lm`` - the one shared language-model layer (tokenising, generation, log-probs with masks);
  ``models`` - the shipped SmolLM2 and MiniLM; ``training`` - the trainer contract (``History``,
  the glossary of names).
- ``data_io``, ``distributed``, ``run_log``, ``cli*`` - your own model and data from the
  command line (``rlhf-lessons train <algo>``, ``rlhf-lessons eval``), on one or many processes.
- ``course/`` - plumbing: seeds, statistics, results files, caching, the lesson runner.
"""

from rlhf_lessons.course.budget import fast_mode, pick
from rlhf_lessons.course.device import get_device, torch_threads
from rlhf_lessons.course.seeding import seed_everything

__version__ = "0.1.0"

__all__ = ["fast_mode", "get_device", "pick", "seed_everything", "torch_threads", "__version__"]
