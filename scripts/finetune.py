"""Fine-tune a pretrained backbone: ``python scripts/finetune.py --backbone resnet50 --classes 10``.

A thin wrapper over ``transferkit finetune``; see ``python scripts/finetune.py --help``.
Multi-process: ``torchrun --standalone --nproc_per_node=2 scripts/finetune.py --backbone resnet18 ...``.
"""

import sys

from transferkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
