import os
import sys
from pathlib import Path

# Tests run on CPU with few threads; keep them deterministic and quiet.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
