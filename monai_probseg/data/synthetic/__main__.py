# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from monai_probseg.data.synthetic.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
