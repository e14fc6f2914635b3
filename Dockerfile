# lightning-gait on a CUDA GPU.
#
# The base image is PyTorch's official CUDA runtime image whose torch matches the pin in
# requirements.txt (torch 2.14.1, CUDA 13.0 build), so pip keeps the image's torch and
# installs only the rest. Build and run:
#   docker build -t lightning-gait .
#   docker run --gpus all --rm -v /path/to/data:/data -e WANDB_API_KEY lightning-gait \
#       --config conf/gait_norm.yaml --data.data_dir /data --trainer.accelerator gpu
# (This file has not been built on the development machines, which have no Docker engine.)
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

WORKDIR /workspace/lightning-gait
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg

# dependencies first, so that code edits do not invalidate this layer
COPY requirements.txt pyproject.toml README.md ./
COPY lightning_gait ./lightning_gait
RUN pip install -r requirements.txt

COPY conf ./conf
# the research tooling beside the library, e.g.
#   docker run --gpus all --rm --entrypoint python lightning-gait -m benchmarks.bench --quick
COPY benchmarks ./benchmarks
COPY experiments ./experiments

ENTRYPOINT ["python", "-m", "lightning_gait.fit"]
CMD ["--config", "conf/gait_norm.yaml"]
