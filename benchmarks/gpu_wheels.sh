#!/usr/bin/env bash
# Wheels of what the GPU machine's image lacks (hydra-core, omegaconf, antlr4, wandb and the parts of wandb's
# needs the image has not), for Python 3.12 on x86_64, into .whl/ (ignored by git; carried by the device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in hydra-core==1.3.2 omegaconf==2.3.0 "wandb==$(python3 -c 'import wandb; print(wandb.__version__)')" \
            gitpython gitdb smmap sentry-sdk setproctitle platformdirs pydantic pydantic-core annotated-types \
            typing-inspection; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done
# antlr4 4.9.3 (Hydra 1.3's pin) is a source distribution only: build its wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
