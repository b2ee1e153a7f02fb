"""rlhf_lessons: the package the rlhf-lessons notebooks import.

Every lesson's algorithm lives here, one module per idea; the notebooks explain, configure, call
these functions, plot, and assert the lesson's claim. Submodules are imported on demand so that
``import rlhf_lessons`` stays cheap (the language-model parts pull in transformers).
"""

from rlhf_lessons.course.budget import fast_mode, pick
from rlhf_lessons.course.device import get_device, torch_threads
from rlhf_lessons.course.seeding import seed_everything

__version__ = "0.1.0"

__all__ = ["fast_mode", "get_device", "pick", "seed_everything", "torch_threads", "__version__"]
