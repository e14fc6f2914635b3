# lightning-gait on a CUDA GPU.
#
# The base image is PyTorch's official CUDA runtime image whose torch matches the pin in
# requirements-runtime.txt (torch 2.14.1, CUDA 13.0 build), so pip keeps the image's torch
# and installs only the rest: the runtime stack, no test tools. Build and run (outputs/ on
# the host keeps the checkpoints and the W&B run; the key is passed through if set):
#   docker build -t lightning-gait .
#   docker run --gpus all --rm -v /path/to/data:/data -v "$PWD/outputs:/workspace/outputs" \
#       -e WANDB_API_KEY lightning-gait --config gait_norm --data.data_dir /data --trainer.accelerator gpu
# (This file has not been built on the development machines, which have no Docker engine.)
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg

# 1. the dependencies alone: this layer is rebuilt only when the pins change
WORKDIR /opt/lightning-gait
COPY requirements-runtime.txt ./
RUN pip install -r requirements-runtime.txt

# 2. the package (its configs inside it), without touching the dependencies; then the
#    research tooling beside it, run from its folder, e.g.
#      docker run --gpus all --rm -w /opt/lightning-gait --entrypoint python lightning-gait -m benchmarks.bench --quick
COPY pyproject.toml README.md LICENSE ./
COPY lightning_gait ./lightning_gait
RUN pip install --no-deps . && rm -rf build
COPY benchmarks ./benchmarks
COPY experiments ./experiments

# runs write outputs/ (checkpoints, W&B) here: mount a host folder on /workspace/outputs
WORKDIR /workspace
ENTRYPOINT ["python", "-m", "lightning_gait.fit"]
CMD ["--config", "gait_norm"]
