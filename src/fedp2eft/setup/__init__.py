"""The setup layer, under both ``pipeline`` and ``fl``: the federation and the clients' tasks
(``federation``), loading a base model — never training one — (``base_models``), where everything of a
run lies (``layout``), what a stage folder records (``stage_state``) and the typed job every
federated message carries (``jobs``)."""
