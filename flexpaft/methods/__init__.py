"""What a method chooses: its templates (templates.py) and its blocks (layers.py, flexora/)."""
