tool
extends EditorPlugin
# Godot 3 editor glue; the NpcAdapt node itself is registered by its class_name.
# Godot 4: use plugin_godot4.gd (set script="plugin_godot4.gd" in plugin.cfg).


func _enter_tree():
	pass


func _exit_tree():
	pass
