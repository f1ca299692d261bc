"""Files in and out: safetensors checkpoints, atomic writes, manifests, receipts, the ledger."""
