"""sendbeat web: the Flask app factory and its CLI (filled in below)."""
