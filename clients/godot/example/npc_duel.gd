extends Node2D
# Example (Godot 3 syntax; for Godot 4 write @export / @onready and connect signals with
# npc.result.connect(_on_result)): an NPC duelist asks npcadapt for its move every few
# frames and reports how well the move worked. The simulated player mostly attacks high;
# every round (5 decisions) ends with done=true, the bridge updates this player's adapter
# and the NPC drifts towards the moves that pay against them (adapter_version rises).
#
# Start a bridge first: npcadapt serve --port 7777 --data data
# Headless demo:        godot3-server --no-window --path clients/godot --run-seconds=20
#                       (also --port=N, --host=H; the project's main scene is this one)

export var host = "127.0.0.1"
export var port = 7777
export var token = ""
export var archetype = "duelist"
export var player_id = "player1"
export var npc_id = "duelist1"
export var decide_every_frames = 6  # one decision per 6 frames: 10 a second at 60 fps
export var steps_per_round = 5  # feedback done=true every 5 decisions ends a round
export var run_seconds = 0.0  # > 0: quit after this long (or pass --run-seconds=N)

const ACTIONS_THAT_WIN = {
	0: ["block_high", "dodge"],  # the player attacks high
	1: ["block_low", "dodge"],  # the player attacks low
	2: ["attack_high", "attack_low", "thrust"],  # the player is open
}

onready var npc = $NpcAdapt
onready var status = $Status

var _pending = -1  # id of the act() in flight, -1 when none
var _frame = 0
var _time = 0.0
var _step = 0
var _round = 1
var _round_reward = 0.0
var _stance = 0  # 0 high attack, 1 low attack, 2 open
var _distance = 0.5
var _stamina = 1.0
var _picks = {}


func _ready():
	randomize()
	for a in OS.get_cmdline_args():
		if a.begins_with("--run-seconds="):
			run_seconds = float(a.split("=")[1])
		elif a.begins_with("--port="):
			port = int(a.split("=")[1])
		elif a.begins_with("--host="):
			host = a.split("=")[1]
		elif a.begins_with("--player="):
			player_id = a.split("=")[1]
	npc.host = host
	npc.port = port
	npc.token = token
	npc.keep_results = false  # this script takes every result from the signals
	npc.connect("result", self, "_on_result")
	npc.connect("failed", self, "_on_failed")
	_new_stance()
	print("npc_duel: asking npcadapt at %s:%d for %s's moves against %s" % [host, port, npc_id, player_id])


func _process(delta):
	_time += delta
	if run_seconds > 0 and _time >= run_seconds:
		print("npc_duel: %d rounds in %.1f s; bye" % [_round - 1, _time])
		get_tree().quit()
		return
	_frame += 1
	if _frame % decide_every_frames == 0 and _pending < 0:
		_pending = npc.act(archetype, player_id, npc_id, _observe())


func _observe():
	var stance = [0.0, 0.0, 0.0]
	stance[_stance] = 1.0
	# distance (2), player_stance (3), player_stamina (2), round_progress (1)
	return [_distance, 1.0 - _distance, stance[0], stance[1], stance[2],
			_stamina, 1.0 - _stamina, _step * 1.0 / steps_per_round]


func _on_result(id, decision):
	if id != _pending:
		return
	_pending = -1
	var move = decision["action_name"]
	var reward = 1.0 if move in ACTIONS_THAT_WIN[_stance] else -0.5
	if move == "dodge":
		reward = 0.2
	_picks[move] = _picks.get(move, 0) + 1
	_round_reward += reward
	_step += 1
	var done = _step >= steps_per_round
	npc.feedback(player_id, npc_id, reward, done)
	status.text = "round %d step %d: %s (adapter v%d) reward %.1f" % [
			_round, _step, move, decision["adapter_version"], reward]
	if done:
		print("round %d: reward %.1f, adapter v%d, moves so far %s" % [
				_round, _round_reward, decision["adapter_version"], str(_picks)])
		_round += 1
		_step = 0
		_round_reward = 0.0
	_new_stance()


func _on_failed(id, code, message, retryable):
	if id != _pending:
		return
	_pending = -1  # asked again a few frames later (retryable: the server was busy)
	status.text = "npcadapt: %s (code %d)" % [message, code]
	printerr("npc_duel: act failed, code %d: %s%s" % [code, message, " (will retry)" if retryable else ""])


func _new_stance():
	var r = randf()
	_stance = 0 if r < 0.6 else (1 if r < 0.8 else 2)  # this player loves high attacks
	_distance = clamp(_distance + rand_range(-0.2, 0.2), 0.0, 1.0)
	_stamina = clamp(_stamina + rand_range(-0.15, 0.1), 0.0, 1.0)
