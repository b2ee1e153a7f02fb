import sys

from rlhf_lessons.cli import main

sys.exit(main())
