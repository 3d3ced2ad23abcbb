@tool
extends EditorPlugin
# Godot 4 editor glue (plugin.cfg: script="plugin_godot4.gd"); the NpcAdapt node itself
# is registered by its class_name. Not run here: only Godot 3.2.3 is installed.


func _enter_tree():
	pass


func _exit_tree():
	pass
