"""Launch the MoSLoRA web UI: ``python app/app.py --base_model PATH --adapters_dir adapters``.

A thin wrapper; the app lives in ``moslora_diffusion.webui`` (``--help`` lists the options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from moslora_diffusion.webui import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
