// A MonoBehaviour that drives one NPC through the npcadapt bridge. Compiled only inside
// Unity (UNITY_5_3_OR_NEWER): outside it this file compiles to nothing, so the mcs builds
// may include it. Copy it next to NpcAdaptClient.cs in Assets/ and adapt it to your game.
#if UNITY_5_3_OR_NEWER
using System;
using NpcAdapt;
using UnityEngine;

public class NpcAdaptBehaviour : MonoBehaviour
{
    public string host = "127.0.0.1";
    public int port = 7777;
    public string token = "";           // empty: the server runs without --token
    public string archetype = "duelist";
    public string playerId = "player-1";
    public string npcId = "sparring-partner";
    public float thinkInterval = 0.5f;  // seconds between decisions

    private NpcAdaptClient _client;
    private float _nextThink;
    private bool _thinking;

    private void Awake()
    {
        // Connects in the background; nothing here blocks the main thread.
        _client = new NpcAdaptClient(host, port, string.IsNullOrEmpty(token) ? null : token);
        _client.OnCallbackException = Debug.LogException;
    }

    private void Update()
    {
        _client.Poll(); // every frame: reads replies and runs callbacks here, on the main thread

        if (_thinking || Time.time < _nextThink) return;
        _thinking = true;
        _nextThink = Time.time + thinkInterval;
        _client.Act(archetype, playerId, npcId, BuildObservation(), onReply: reply =>
        {
            _thinking = false;
            Decision d;
            if (reply.TryGetDecision(out d))
            {
                PlayAction(d.Action, d.ActionName); // Unity API calls are safe here
            }
            else if (reply.Retryable)
            {
                _nextThink = Time.time + 0.1f; // OVERLOADED: the server did nothing, try again soon
            }
            else
            {
                Debug.LogWarning("npcadapt act failed: [" + reply.ErrorCode + "] " + reply.ErrorMessage);
            }
        });
    }

    /// <summary>Call when the NPC's last action turned out well or badly; done ends the episode (a round).</summary>
    public void Reward(float reward, bool done)
    {
        _client.Feedback(playerId, npcId, reward, done);
    }

    private void OnDestroy()
    {
        if (_client == null) return;
        _client.Flush(); // sent now; make the adapters durable at checkpoints (end of a match)
        _client.Poll();
        _client.Dispose();
    }

    private float[] BuildObservation()
    {
        // The duelist's 8 features: distance (2), player_stance (3), player_stamina (2), round_progress (1).
        return new float[] { 0.5f, 0.25f, 1f, 0f, 0f, 0.75f, 0.5f, 0f };
    }

    private void PlayAction(int action, string actionName)
    {
        // e.g. animator.SetTrigger(actionName);
    }
}
#endif
