"""What every command shares at run time: the composed config and its checks (config.py), the parts built from it
(build.py), the run folder (run_folder.py) and the Lightning trainer's plugins (lightning_plugins.py)."""
