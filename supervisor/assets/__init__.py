"""Static assets: content-addressed storage (store.py); serving is supervisor.edge.assets."""
