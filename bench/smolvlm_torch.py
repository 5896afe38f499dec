#!/usr/bin/env python3
"""PyTorch-eager half of the SmolVLM benchmark (candle vs. PyTorch, CPU, float32).

A full-size SmolVLM-256M-Instruct (Idefics3ForConditionalGeneration: SigLIP-style vision
tower 768x12, pixel-shuffle connector with scale_factor 4, Llama text model 576x30) with
random, seeded weights, laid out like the Hugging Face repo HuggingFaceTB/SmolVLM-256M-Instruct.
Nothing is downloaded: the config, the tokenizer (a small byte-level BPE trained locally with
SmolVLM's special tokens, as in tests/fixtures/make_fixtures.py) and the weights are built here.
Outputs are meaningless by construction; only speed and memory are measured.

Usage (from the repository root):

    python bench/smolvlm_torch.py make [--out DIR] [--seed 0]
        Writes DIR (default target/bench/smolvlm-256m-random; target/ is git-ignored):
        config.json, generation_config.json, model.safetensors (float32, hub tensor names),
        preprocessor_config.json, processor_config.json, chat_template.json, tokenizer.json,
        tokenizer_config.json, special_tokens_map.json. Then reloads it with
        Idefics3ForConditionalGeneration.from_pretrained and AutoProcessor.from_pretrained.
        About 1 GiB on disk; takes well under a minute.

    python bench/smolvlm_torch.py time [--dir DIR] [--image suites/images/chelsea.png]
                                       [--runs 3] [--threads 2] [--json FILE]
        torch.set_num_threads(2), eager attention, float32, CPU. One warm-up, then --runs timed
        runs of: processor(chat template + image) + generate with exactly 16 new tokens
        (min_new_tokens = max_new_tokens = 16, greedy). Also times a prefill (one forward pass
        over the prompt) separately. Prints one JSON object (medians and every run) to stdout.

Benchmark-specific choices (differences from the real repo): `size.longest_edge` is 1536
instead of 2048 (chelsea.png, 451x300 -> 1536x1022 -> 3x2 tiles of 512 + 1 global image =
7 images, 448 image tokens); the tokenizer has ~360 entries (the model's vocabulary is
49280, so ids >= the tokenizer size are never produced by the prompt but can be generated);
the lm_head rows of the EOS-like tokens are zeroed so greedy decoding never picks them
(an implementation that does not honour min_new_tokens still gets 16 tokens).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join("target", "bench", "smolvlm-256m-random")
DEFAULT_IMAGE = os.path.join("suites", "images", "chelsea.png")
QUESTION = "What animal is in the picture?"
NEW_TOKENS = 16

# Real SmolVLM-256M-Instruct dimensions.
TEXT = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, vocab_size=49280, rope_theta=100000.0, rms_norm_eps=1e-5,
            max_position_embeddings=8192, hidden_act="silu")
VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              patch_size=16, image_size=512, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
SCALE_FACTOR = 4
IMAGE_SEQ_LEN = (VISION["image_size"] // VISION["patch_size"]) ** 2 // SCALE_FACTOR ** 2  # 64
SIZE_LONGEST_EDGE = 1536  # real repo: 2048
MAX_IMAGE_SIZE = 512

CHAT_TEMPLATE = (  # SmolVLM's template
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

CORPUS = """
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
What is shown in this image? Describe the image in detail. How many objects are there?
What color is the square? The circle is red and the square is blue. There is a green
triangle on the left side of the image and a yellow line at the bottom. The sky is
bright and the background is a smooth gradient from dark to light. Can you describe
this image? Answer the question briefly. Caption the picture. This is a photo of a
cat sitting on a table next to a cup of coffee. The dog is running in the park.
Two people are walking along the beach at sunset. The text in the image says hello.
Is there a person in the picture? Yes, there is. No, there is not. It is a drawing.
The image shows a simple shape on a plain background with some colors and lines.
Where is the ball? The ball is under the chair. Which one is bigger? The left one.
What animal is in the picture? The animal is a cat. It is a small animal with a tail.
""" * 4

SPECIAL_TOKENS_MAP = {
    "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
    "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
}


def rel(path):
    return path if os.path.isabs(path) else os.path.join(REPO, path)


def dir_size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# =========================================================================== make
def build_tokenizer():
    """SmolLM2-style byte-level BPE: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, BPE vocab, then
    SmolVLM's added tokens (<global-img>, <row_i_col_j>, <fake_token_around_image>, <image>,
    <end_of_utterance>) at the end. Same construction as tests/fixtures/make_fixtures.py."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    added = (["<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
             + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
    tok.add_tokens([AddedToken(n, special=True, normalized=False) for n in added])
    return tok


def random_state_dict(model, seed):
    """float32, deterministic: matrices/embeddings/conv ~ N(0, 0.02), biases ~ N(0, 0.02), norm weights 1."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in sorted(model.named_parameters()):
        if p.dim() >= 2 or name.endswith("bias"):
            t = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32) * 0.02
        else:  # LayerNorm / RMSNorm weights
            t = torch.ones(tuple(p.shape), dtype=torch.float32)
        sd[name] = t.contiguous()
    return sd


def cmd_make(args):
    import transformers
    from safetensors.torch import save_file
    from transformers import (GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3Processor)
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    t0 = time.perf_counter()
    out = rel(args.out)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):  # start clean (only our own files live here)
        os.remove(os.path.join(out, f))

    tok = build_tokenizer()
    tid = tok.token_to_id
    assert tok.get_vocab_size() <= TEXT["vocab_size"]
    tok.save(os.path.join(out, "tokenizer.json"))
    tok_cfg = {
        "add_prefix_space": False,
        "additional_special_tokens": SPECIAL_TOKENS_MAP["additional_special_tokens"],
        "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "model_max_length": 8192,
        "legacy": False, "processor_class": "Idefics3Processor", "tokenizer_class": "GPT2Tokenizer",
        "chat_template": CHAT_TEMPLATE,
    }
    json.dump(tok_cfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)

    cfg = Idefics3Config(
        image_token_id=tid("<image>"), scale_factor=SCALE_FACTOR, tie_word_embeddings=False,
        pad_token_id=tid("<|im_end|>"),
        vision_config=dict(model_type="idefics3_vision", **VISION),
        text_config=dict(model_type="llama", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                         bos_token_id=tid("<|im_start|>"), eos_token_id=tid("<end_of_utterance>"),
                         pad_token_id=tid("<|im_end|>"), **TEXT),
    )
    cfg.architectures = ["Idefics3ForConditionalGeneration"]
    cfg.save_pretrained(out)
    # transformers 4.x style `rope_theta` next to v5's `rope_parameters` (as in the hub config)
    cp = os.path.join(out, "config.json")
    c = json.load(open(cp))
    tc = c["text_config"]
    if "rope_parameters" in tc and "rope_theta" in tc["rope_parameters"]:
        tc["rope_theta"] = tc["rope_parameters"]["rope_theta"]
    if "_pad_token_id" in c:  # v5 serialises the property's backing field; the hub config has pad_token_id
        c["pad_token_id"] = c.pop("_pad_token_id")
    c["torch_dtype"] = "float32"
    json.dump(c, open(cp, "w"), indent=2, sort_keys=True)

    # weights: names/shapes from a meta-device model (transformers 5 names == hub names for idefics3)
    with torch.device("meta"):
        meta_model = Idefics3ForConditionalGeneration(cfg)
    sd = random_state_dict(meta_model, args.seed)
    del meta_model
    with torch.no_grad():  # EOS-like tokens: logit exactly 0 -> never the greedy pick
        for t in ("<|im_end|>", "<end_of_utterance>", "<|endoftext|>"):
            sd["lm_head.weight"][tid(t)].zero_()
    save_file(dict(sorted(sd.items())), os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(t.numel() for t in sd.values())
    del sd

    GenerationConfig(bos_token_id=tid("<|im_start|>"), eos_token_id=[tid("<|im_end|>"), tid("<end_of_utterance>")],
                     pad_token_id=tid("<|im_end|>")).save_pretrained(out)

    improc = Idefics3ImageProcessorPil(
        do_convert_rgb=True, do_resize=True, size={"longest_edge": SIZE_LONGEST_EDGE}, resample=1,
        do_image_splitting=True, max_image_size={"longest_edge": MAX_IMAGE_SIZE},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    processor = Idefics3Processor(improc, hf_tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)

    # hub layout (saved with transformers 4.x): preprocessor_config.json + processor_config.json +
    # chat_template.json; transformers 5 nests the image processor in processor_config.json and
    # writes chat_template.jinja.
    pc_path = os.path.join(out, "processor_config.json")
    pc = json.load(open(pc_path))
    improc_d = pc.pop("image_processor")
    improc_d["image_processor_type"] = "Idefics3ImageProcessor"
    improc_d["processor_class"] = "Idefics3Processor"
    json.dump(improc_d, open(os.path.join(out, "preprocessor_config.json"), "w"), indent=2, sort_keys=True)
    pc = {"image_seq_len": IMAGE_SEQ_LEN, "processor_class": "Idefics3Processor"}
    json.dump(pc, open(pc_path, "w"), indent=2)
    jt = os.path.join(out, "chat_template.jinja")
    if os.path.exists(jt):
        os.remove(jt)
    json.dump({"chat_template": CHAT_TEMPLATE}, open(os.path.join(out, "chat_template.json"), "w"), indent=2)
    json.dump(tok_cfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)  # hub-style
    json.dump(SPECIAL_TOKENS_MAP, open(os.path.join(out, "special_tokens_map.json"), "w"), indent=2)
    tok.save(os.path.join(out, "tokenizer.json"))  # exactly ours, not a re-serialisation
    for f in os.listdir(out):
        os.chmod(os.path.join(out, f), 0o644)  # safetensors writes 0600
    t_write = time.perf_counter() - t0

    # reload check
    model, info = Idefics3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32,
                                                                  output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} or info.get("error_msgs")
    assert not bad, f"loading info not clean: {info}"
    proc = transformers.AutoProcessor.from_pretrained(out)
    assert type(proc).__name__ == "Idefics3Processor", type(proc)
    assert proc.image_seq_len == IMAGE_SEQ_LEN
    assert proc.image_processor.size["longest_edge"] == SIZE_LONGEST_EDGE
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert proc.apply_chat_template(msgs, add_generation_prompt=True).endswith("Assistant:")
    assert model.config.text_config.vocab_size == TEXT["vocab_size"]
    summary = {
        "dir": out, "seed": args.seed, "parameters": n_params,
        "size_bytes": dir_size(out), "files": sorted(os.listdir(out)),
        "tokenizer_vocab": tok.get_vocab_size(),
        "special_token_ids": {t: tid(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<global-img>",
                                                  "<row_1_col_1>", "<fake_token_around_image>", "<image>",
                                                  "<end_of_utterance>"]},
        "write_s": round(t_write, 2), "total_s": round(time.perf_counter() - t0, 2),
        "reload": f"{type(model).__name__} + {type(proc).__name__} ({type(proc.image_processor).__name__})",
    }
    print(json.dumps(summary, indent=1))


# =========================================================================== time
class Stamps:
    """generate() streamer: the time each new token comes out (the first put() is the prompt)."""

    def __init__(self):
        self.times = []
        self.seen_prompt = False

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def med(xs):
    return statistics.median(xs)


def cmd_time(args):
    torch.set_num_threads(args.threads)
    import transformers
    from PIL import Image
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    d = rel(args.dir)
    t0 = time.perf_counter()
    model = Idefics3ForConditionalGeneration.from_pretrained(d, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(d)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mib()

    image_path = rel(args.image)
    image = Image.open(image_path)
    image.load()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    gen_kwargs = dict(do_sample=False, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS)

    def answer():
        ta = time.perf_counter()
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        tb = time.perf_counter()
        st = Stamps()
        with torch.inference_mode():
            gen = model.generate(**inputs, streamer=st, **gen_kwargs)
        tc = time.perf_counter()
        n_prompt = inputs["input_ids"].shape[1]
        new = gen[0, n_prompt:].tolist()
        assert len(new) == NEW_TOKENS and len(st.times) == NEW_TOKENS, (len(new), len(st.times))
        return {"total_s": tc - ta, "preprocess_s": tb - ta, "model_s": tc - tb,
                "first_token_s": st.times[0] - tb,
                "decode_s": st.times[-1] - st.times[0]}, inputs, new

    def prefill(inputs):
        ta = time.perf_counter()
        with torch.inference_mode():
            out = model(**inputs, use_cache=True, logits_to_keep=1)  # as generate's prefill does
        tb = time.perf_counter()
        return tb - ta, out.logits[0, -1]

    warm, inputs, new_ids = answer()
    prefill(inputs)
    runs, prefills = [], []
    for _ in range(args.runs):
        r, _, ids = answer()
        assert ids == new_ids, "greedy output changed between runs"
        runs.append(r)
    for _ in range(args.runs):
        p, last_logits = prefill(inputs)
        prefills.append(p)

    pv = inputs["pixel_values"]
    ids = inputs["input_ids"][0].tolist()
    image_token_id = model.config.image_token_id
    n_images = int(pv.shape[1])
    decode_steps = NEW_TOKENS - 1
    rnd = lambda xs: [round(x, 4) for x in xs]
    res = {
        "bench": "smolvlm-256m-random, PyTorch eager, CPU",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "threads": torch.get_num_threads(), "dtype": "float32", "attn_implementation": "eager",
        "dir": d,
        "checkpoint_bytes": os.path.getsize(os.path.join(d, "model.safetensors")),
        "dir_bytes": dir_size(d),
        "parameters": sum(p.numel() for p in model.parameters()),
        "image": os.path.relpath(image_path, REPO), "image_size_wh": list(image.size),
        "question": QUESTION, "prompt": prompt,
        "prompt_tokens": len(ids), "image_tokens": ids.count(image_token_id),
        "images_to_vision_encoder": n_images, "tiles": n_images - 1 if n_images > 1 else 0,
        "global_image": n_images > 1,
        "pixel_values_shape": list(pv.shape),
        "new_tokens": NEW_TOKENS, "generate_kwargs": gen_kwargs,
        "new_token_ids": new_ids,
        "new_text": processor.tokenizer.decode(new_ids, skip_special_tokens=False),
        "new_text_note": "ids >= the tokenizer size (%d) decode to nothing" % len(processor.tokenizer),
        "prefill_last_logits_argmax": int(last_logits.argmax()),
        "prefill_matches_first_token": int(last_logits.argmax()) == new_ids[0],
        "load_s": round(load_s, 3),
        "runs": args.runs,
        "warmup": {k: round(v, 4) for k, v in warm.items()},
        "answer_total_s": {"median": round(med([r["total_s"] for r in runs]), 4),
                           "all": rnd([r["total_s"] for r in runs])},
        "preprocess_s": {"median": round(med([r["preprocess_s"] for r in runs]), 4),
                         "all": rnd([r["preprocess_s"] for r in runs])},
        "model_s": {"median": round(med([r["model_s"] for r in runs]), 4),
                    "all": rnd([r["model_s"] for r in runs])},
        "prefill_s": {"median": round(med(prefills), 4), "all": rnd(prefills),
                      "note": "model(**inputs, logits_to_keep=1): one forward over the prompt incl. vision encoder, timed alone"},
        "first_token_s": {"median": round(med([r["first_token_s"] for r in runs]), 4),
                          "all": rnd([r["first_token_s"] for r in runs]),
                          "note": "inside generate: from its start to the first new token"},
        "decode_tokens_per_s": {
            "median": round(med([decode_steps / r["decode_s"] for r in runs]), 3),
            "all": [round(decode_steps / r["decode_s"], 3) for r in runs],
            "note": f"{decode_steps} steps after the first token, timed by a streamer inside generate"},
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_load_mib": round(rss_after_load, 1),
    }
    s = json.dumps(res, indent=1)
    print(s)
    if args.json:
        with open(rel(args.json), "w") as f:
            f.write(s + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="build the random-weight checkpoint folder")
    m.add_argument("--out", default=DEFAULT_DIR)
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("time", help="time PyTorch eager generate on CPU")
    t.add_argument("--dir", default=DEFAULT_DIR)
    t.add_argument("--image", default=DEFAULT_IMAGE)
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.cmd == "make":
        torch.set_num_threads(min(2, torch.get_num_threads()))
        cmd_make(args)
    else:
        cmd_time(args)


if __name__ == "__main__":
    main()
