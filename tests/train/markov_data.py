"""A small synthetic dataset in the documented token-shard format, shared by the training tests: a random
first-order Markov source (each token has 2 likely successors), learnable in a few steps."""
import json, os, random, struct

def write_shard(path, ids, vocab):
    with open(path, "wb") as f:
        f.write(b"MTPTOKS\0" + struct.pack("<IIQII", 1, 2, len(ids), vocab, 0))
        f.write(struct.pack(f"<{len(ids)}H", *ids))

def make_dataset(d, V, n_train=20000, n_val=3000, seed=0):
    os.makedirs(d, exist_ok=True)
    rnd = random.Random(seed)
    succ = {a: [rnd.randrange(2, V) for _ in range(2)] for a in range(V)}
    def gen(n):
        out = [2]
        while len(out) < n:
            out.append(rnd.choice(succ[out[-1]]) if rnd.random() < 0.9 else rnd.randrange(2, V))
        return out
    write_shard(os.path.join(d, "train_000.bin"), gen(n_train), V)
    write_shard(os.path.join(d, "val_000.bin"), gen(n_val), V)
    json.dump({"format": "mtp.cpp token shards v1", "tokenizer": "", "vocab_size": V, "eos_id": 1,
               "train": ["train_000.bin"], "val": ["val_000.bin"]}, open(os.path.join(d, "meta.json"), "w"))
