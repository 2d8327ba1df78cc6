# para-attn-server in a container: by default the tiny CPU predictor on 2 ranks, as `make serve`.
#
#   docker build -t para-attn-server .
#   docker run --rm -p 5000:5000 -v para-attn-outputs:/outputs para-attn-server
#
# A CUDA build of torch instead of the CPU one (TORCH is any pip requirement; TORCH_INDEX the
# index to get it from, empty for PyPI's default build):
#
#   docker build --build-arg TORCH=torch==2.13.0 --build-arg TORCH_INDEX= -t para-attn-server:cuda .
#   docker run --rm --gpus all --shm-size 1g -p 5000:5000 -v para-attn-outputs:/outputs \
#       -v /models/flux:/models/flux:ro para-attn-server:cuda \
#       --host 0.0.0.0 --port 5000 --output-dir /outputs --model flux --model-path /models/flux --num-devices 2
#
# Arguments after the image name replace CMD below (keep --host 0.0.0.0 and --output-dir /outputs).
# deploy/kubernetes.yaml runs this image with probes and a drain; tests/integration/test_container.py
# runs ENTRYPOINT + CMD as written here in the project's venv and checks that manifest against it.

FROM python:3.11-slim

ARG TORCH=torch==2.13.0
# PyPI's torch for Linux is the CUDA build (GBs of libraries): the CPU wheels come from PyTorch's own index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# pip < 25: para-attn publishes only an sdist whose metadata pip >= 25 refuses (see the Makefile).
RUN python -m venv /opt/venv && pip install "pip<25"
# Torch on its own layer, before the sources: editing the project does not download it again.
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY plugins plugins
COPY contrib_predictors contrib_predictors
RUN pip install ./core/client . && rm -rf /src

# Not root; /outputs is the volume its jobs' files and journal go to.
RUN useradd --create-home --uid 1000 server && mkdir /outputs && chown server /outputs
USER server
WORKDIR /home/server
VOLUME /outputs
EXPOSE 5000

# Exec form: para-attn-server is PID 1 and gets SIGTERM itself, which drains (new jobs 503,
# running jobs finish within --drain-timeout, queued ones are cancelled, exit 0).
ENTRYPOINT ["para-attn-server"]
CMD ["--host", "0.0.0.0", "--port", "5000", "--output-dir", "/outputs", "--model", "tiny", "--num-devices", "2", "--drain-timeout", "30"]
