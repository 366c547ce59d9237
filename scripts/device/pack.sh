# Pack a run folder's small outputs (no model, checkpoints or snapshots) into $OUT/<name>.tgz
cd "$1" && tar czf "$OUT/$2.tgz" --exclude='*/checkpoint' --exclude='*/snapshots' --exclude='base_model/model' --exclude='*/clients' . ; cd - >/dev/null
