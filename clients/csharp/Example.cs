// Example: one player plays a few short duels against an adapting NPC, the way a game
// would drive the client: Update() is called once per (simulated) frame, it calls Poll()
// and never blocks; decisions come back through callbacks a frame or two later.
//
//   mcs -optimize+ -out:/tmp/npcadapt-example.exe clients/csharp/NpcAdaptClient.cs clients/csharp/Example.cs
//   mono /tmp/npcadapt-example.exe 127.0.0.1 7777        (NPCADAPT_TOKEN=... when the server has --token)
//
// Exits 0 after printing the player's adapter version, 1 with one line on stderr when it
// cannot connect or a call fails.
#if !UNITY_5_3_OR_NEWER
using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.Threading;

namespace NpcAdapt.Examples
{
    internal sealed class DuelGame
    {
        private const string Archetype = "duelist";
        private const string Npc = "sparring-partner";
        private const int Episodes = 4; // the server updates a player's adapter every 4 episodes by default
        private const int Steps = 6;

        private enum Phase { LoadArchetypes, Playing, WaitForAdapter, Done }

        private readonly NpcAdaptClient _client;
        private readonly string _player;
        private readonly Random _random = new Random(7);
        private Phase _phase = Phase.LoadArchetypes;
        private int _requestId;
        private int _obsSize;
        private string[] _actions;
        private int _episode, _step;
        private bool _thinking; // an act is in flight
        private float _episodeReward;
        private int _infoTries;
        private readonly Dictionary<string, int> _counts = new Dictionary<string, int>();

        public string Failure;
        public bool Finished { get { return _phase == Phase.Done || Failure != null; } }

        public DuelGame(NpcAdaptClient client, string player)
        {
            _client = client;
            _player = player;
            _requestId = _client.Archetypes();
        }

        /// <summary>Called once per frame, like MonoBehaviour.Update.</summary>
        public void Update()
        {
            _client.Poll(); // completes replies, runs callbacks; never blocks, never throws
            Reply reply;
            switch (_phase)
            {
                case Phase.LoadArchetypes:
                    if (!_client.TryTake(_requestId, out reply)) return;
                    if (!reply.Ok)
                    {
                        Failure = reply.ErrorMessage;
                        return;
                    }
                    if (!ReadSpec(reply.Value)) return;
                    _phase = Phase.Playing;
                    break;
                case Phase.Playing:
                    if (_thinking) return;
                    if (_episode == Episodes)
                    {
                        _phase = Phase.WaitForAdapter;
                        _requestId = _client.AdapterInfo(Archetype, _player);
                        return;
                    }
                    _thinking = true;
                    _client.Act(Archetype, _player, Npc, Observation(), onReply: OnDecision);
                    break;
                case Phase.WaitForAdapter:
                    if (!_client.TryTake(_requestId, out reply)) return;
                    if (!reply.Ok)
                    {
                        Failure = "adapter_info failed: [" + reply.ErrorCode + "] " + reply.ErrorMessage;
                        return;
                    }
                    var info = reply.Value as IDictionary;
                    long version = 0;
                    if (info != null) Values.TryToLong(info["version"], out version);
                    // the online trainer updates the adapter in the background: ask again for a while
                    if (version == 0 && ++_infoTries < 50)
                    {
                        Thread.Sleep(100);
                        _requestId = _client.AdapterInfo(Archetype, _player);
                        return;
                    }
                    Console.WriteLine(info == null
                        ? "adapter: none yet (base policy)"
                        : "adapter: version " + version + ", updates " + info["updates"]);
                    _phase = Phase.Done;
                    break;
            }
        }

        private void OnDecision(Reply reply)
        {
            _thinking = false;
            Decision d;
            if (!reply.TryGetDecision(out d))
            {
                Failure = "act failed: [" + reply.ErrorCode + "] " + reply.ErrorMessage;
                return;
            }
            int n;
            _counts.TryGetValue(d.ActionName, out n);
            _counts[d.ActionName] = n + 1;
            // The game scores the NPC's move: here blocks and dodges are rewarded.
            float reward = d.ActionName.StartsWith("block", StringComparison.Ordinal) || d.ActionName == "dodge" ? 1f : -0.1f;
            _episodeReward += reward;
            _step++;
            bool done = _step == Steps;
            _client.Feedback(_player, Npc, reward, done); // a notification: nothing to wait for
            if (done)
            {
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "episode {0}: reward {1:0.00}", _episode + 1, _episodeReward));
                _episode++;
                _step = 0;
                _episodeReward = 0;
            }
        }

        private bool ReadSpec(object value)
        {
            var archetypes = value as IList;
            if (archetypes != null)
            {
                foreach (object a in archetypes)
                {
                    var spec = a as IDictionary;
                    if (spec == null || (spec["name"] as string) != Archetype) continue;
                    foreach (object f in (IList)spec["observation"])
                    {
                        long size;
                        Values.TryToLong(((IDictionary)f)["size"], out size);
                        _obsSize += (int)size;
                    }
                    var names = (IList)spec["actions"];
                    _actions = new string[names.Count];
                    for (int i = 0; i < names.Count; i++) _actions[i] = (string)names[i];
                    Console.WriteLine("duelist: obs " + _obsSize + ", actions " + string.Join(" ", _actions));
                    return true;
                }
            }
            Failure = "the server has no " + Archetype + " archetype";
            return false;
        }

        private float[] Observation()
        {
            var obs = new float[_obsSize];
            for (int i = 0; i < obs.Length; i++) obs[i] = (float)Math.Round(_random.NextDouble(), 3);
            obs[obs.Length - 1] = (float)_step / Steps; // round_progress, the last feature
            return obs;
        }

        public string Summary()
        {
            var parts = new List<string>();
            foreach (var kv in _counts) parts.Add(kv.Key + "=" + kv.Value);
            parts.Sort(StringComparer.Ordinal);
            return "actions: " + string.Join(" ", parts.ToArray());
        }
    }

    internal static class Program
    {
        private static int Main(string[] args)
        {
            string host = args.Length > 0 ? args[0] : (Environment.GetEnvironmentVariable("NPCADAPT_HOST") ?? "127.0.0.1");
            string portText = args.Length > 1 ? args[1] : (Environment.GetEnvironmentVariable("NPCADAPT_PORT") ?? "7777");
            int port;
            if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port <= 0 || port > 65535)
            {
                Console.Error.WriteLine("npcadapt example: bad port " + portText);
                return 2;
            }
            string token = Environment.GetEnvironmentVariable("NPCADAPT_TOKEN");
            string player = Environment.GetEnvironmentVariable("PLAYER") ?? "csharp-player-1";

            using (var client = new NpcAdaptClient(host, port, token))
            {
                var game = new DuelGame(client, player);
                DateTime giveUp = DateTime.UtcNow.AddSeconds(60);
                while (!game.Finished)
                {
                    game.Update();
                    if (DateTime.UtcNow > giveUp) game.Failure = "gave up after 60 s";
                    Thread.Sleep(2); // the rest of the frame
                }
                if (game.Failure != null)
                {
                    Console.Error.WriteLine("npcadapt example: " + game.Failure);
                    return 1;
                }
                Console.WriteLine(game.Summary());
                Console.WriteLine("ok");
            }
            return 0;
        }
    }
}
#endif
