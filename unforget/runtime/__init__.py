"""Where and how things run: device/precision selection, seeding, progress callbacks."""
