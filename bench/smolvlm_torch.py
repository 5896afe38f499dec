#!/usr/bin/env python3
"""PyTorch-eager half of the SmolVLM benchmark (candle vs. PyTorch, CPU, float32).

A full-size SmolVLM-256M-Instruct (Idefics3ForConditionalGeneration: SigLIP-style vision
tower 768x12, pixel-shuffle connector with scale_factor 4, Llama text model 576x30) with
random, seeded weights, laid out like the Hugging Face repo HuggingFaceTB/SmolVLM-256M-Instruct
(`--preset 256m`, the default); or, with `--preset 2.2b`, the architecture of
HuggingFaceTB/SmolVLM2-2.2B-Instruct (SmolVLMForConditionalGeneration: SigLIP so400m-style vision
tower 1152x27 with patch 14 at 384, scale_factor 3, Llama text model 2048x24, 32 heads, untied
lm_head; about 2.2e9 parameters, 9 GB of float32). Nothing is downloaded: the config, the tokenizer (a small byte-level BPE trained locally with
SmolVLM's special tokens, as in tests/fixtures/make_fixtures.py) and the weights are built here.
Outputs are meaningless by construction; only speed and memory are measured.

Usage (from the repository root):

    python bench/smolvlm_torch.py make [--preset 256m|2.2b] [--out DIR] [--seed 0]
        Writes DIR (default target/bench/smolvlm-256m-random, or target/bench/smolvlm2-2.2b-random
        for --preset 2.2b; target/ is git-ignored): config.json, generation_config.json,
        model.safetensors (float32, hub tensor names, written tensor by tensor so that the
        weights are never all in memory at once), preprocessor_config.json, processor_config.json,
        chat_template.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json.
        Then reloads it with the config's class (Idefics3ForConditionalGeneration or
        SmolVLMForConditionalGeneration).from_pretrained and AutoProcessor.from_pretrained, and
        runs the processor once on suites/images/chelsea.png.
        256m: about 1 GiB on disk, well under a minute. 2.2b: about 9 GB on disk, needs about
        as much free memory for the reload check, a few minutes.

    python bench/smolvlm_torch.py time [--dir DIR] [--image suites/images/chelsea.png]
                                       [--runs 3] [--threads 2] [--json FILE] [--logits FILE]
        torch.set_num_threads(2), eager attention, float32, CPU. One warm-up, then --runs timed
        runs of: processor(chat template + image) + generate with exactly 16 new tokens
        (min_new_tokens = max_new_tokens = 16, greedy). Also times a prefill (one forward pass
        over the prompt) separately. Prints one JSON object (medians and every run) to stdout.
        --logits FILE writes that prefill's last-position logits (the first step's: the drift of
        candle's quantized runs is measured against them) as float32 little-endian.

Benchmark-specific choices (differences from the real repo): `size.longest_edge` is 1536
instead of 2048 for 256m (chelsea.png, 451x300 -> 1536x1022 -> 3x2 tiles of 512 + 1 global
image = 7 images, 448 image tokens) and 1152 instead of 1536 for 2.2b (-> 1152x766 -> 3x2 tiles
of 384 + 1 global image = 7 images, 7 x 81 = 567 image tokens); both presets use the Idefics3
processor classes (Idefics3ImageProcessor / Idefics3Processor, which the 256M repo names and
which preprocess images exactly as SmolVLM's do) because transformers' SmolVLMProcessor needs
`num2words` and, for its video processor, `torchvision`, neither of which the benchmark
installs; the chat template is SmolVLM's (the 256M one) for both; the tokenizer has ~360 entries (the model's vocabulary is
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

# Real SmolVLM-256M-Instruct dimensions (--preset 256m).
TEXT = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, vocab_size=49280, rope_theta=100000.0, rms_norm_eps=1e-5,
            max_position_embeddings=8192, hidden_act="silu")
VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              patch_size=16, image_size=512, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
SCALE_FACTOR = 4
IMAGE_SEQ_LEN = (VISION["image_size"] // VISION["patch_size"]) ** 2 // SCALE_FACTOR ** 2  # 64
SIZE_LONGEST_EDGE = 1536  # real repo: 2048
MAX_IMAGE_SIZE = 512

# Real SmolVLM2-2.2B-Instruct dimensions (--preset 2.2b).
TEXT_2B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
               num_key_value_heads=32, head_dim=64, vocab_size=49280, rope_theta=273768.0, rms_norm_eps=1e-5,
               max_position_embeddings=16384, hidden_act="silu")
VISION_2B = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                 patch_size=14, image_size=384, num_channels=3, hidden_act="gelu_pytorch_tanh",
                 layer_norm_eps=1e-6)

PRESETS = {
    "256m": dict(model_type="idefics3", architecture="Idefics3ForConditionalGeneration",
                 text=TEXT, vision=VISION, scale_factor=SCALE_FACTOR, size_longest_edge=SIZE_LONGEST_EDGE,
                 max_image_size=MAX_IMAGE_SIZE, out=DEFAULT_DIR),
    "2.2b": dict(model_type="smolvlm", architecture="SmolVLMForConditionalGeneration",
                 text=TEXT_2B, vision=VISION_2B, scale_factor=3,
                 size_longest_edge=1152,  # real repo: 1536
                 max_image_size=384, out=os.path.join("target", "bench", "smolvlm2-2.2b-random")),
}
for _p in PRESETS.values():  # 64 (256m), 81 (2.2b)
    _p["image_seq_len"] = ((_p["vision"]["image_size"] // _p["vision"]["patch_size"]) ** 2
                           // _p["scale_factor"] ** 2)


def model_class(model_dir):
    """The ForConditionalGeneration class for a checkpoint folder, from its config.json's model_type."""
    import transformers
    mt = json.load(open(os.path.join(model_dir, "config.json")))["model_type"]
    names = {"idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}
    if mt not in names:
        raise SystemExit(f"{model_dir}: model_type {mt!r} is neither idefics3 nor smolvlm")
    return getattr(transformers, names[mt])

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


def random_tensors(shapes, seed, zero_rows):
    """Yields (name, tensor) in name order, float32, deterministic: matrices/embeddings/conv ~ N(0, 0.02),
    biases ~ N(0, 0.02), norm weights 1 (one generator, drawn in name order). zero_rows: {name: [row, ...]}
    set to exactly 0 after drawing."""
    g = torch.Generator().manual_seed(seed)
    for name, shape in shapes:
        if len(shape) >= 2 or name.endswith("bias"):
            t = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
        else:  # LayerNorm / RMSNorm weights
            t = torch.ones(shape, dtype=torch.float32)
        for r in zero_rows.get(name, ()):
            t[r].zero_()
        yield name, t.contiguous()


def write_random_safetensors(path, shapes, seed, zero_rows):
    """model.safetensors one tensor at a time, in the byte layout safetensors' save_file writes for an
    all-F32 dict (compact JSON header, __metadata__ first, tensors sorted by name, header padded with
    spaces to a multiple of 8), so memory stays at one tensor however large the model."""
    import numpy as np

    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes:
        n = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for name, t in random_tensors(shapes, seed, zero_rows):
            a = t.numpy()
            assert a.dtype == np.float32 and a.dtype.byteorder in "=<" and sys.byteorder == "little"
            f.write(a.tobytes() if a.ndim == 0 else memoryview(a.reshape(-1)))
    assert os.path.getsize(path) == 8 + len(hb) + off


def cmd_make(args):
    import transformers
    from transformers import GenerationConfig, Idefics3Config, Idefics3Processor, SmolVLMConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    P = PRESETS[args.preset]
    TEXT, VISION = P["text"], P["vision"]
    IMAGE_SEQ_LEN, SIZE_LONGEST_EDGE, MAX_IMAGE_SIZE = P["image_seq_len"], P["size_longest_edge"], P["max_image_size"]
    t0 = time.perf_counter()
    out = rel(args.out or P["out"])
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
        "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
        "model_max_length": TEXT["max_position_embeddings"],
        "legacy": False, "processor_class": "Idefics3Processor", "tokenizer_class": "GPT2Tokenizer",
        "chat_template": CHAT_TEMPLATE,
    }
    json.dump(tok_cfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)

    config_class = {"idefics3": Idefics3Config, "smolvlm": SmolVLMConfig}[P["model_type"]]
    cfg = config_class(
        image_token_id=tid("<image>"), scale_factor=P["scale_factor"], tie_word_embeddings=False,
        pad_token_id=tid("<|im_end|>"),
        vision_config=dict(model_type=P["model_type"] + "_vision", **VISION),
        text_config=dict(model_type="llama", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                         bos_token_id=tid("<|im_start|>"), eos_token_id=tid("<end_of_utterance>"),
                         pad_token_id=tid("<|im_end|>"), **TEXT),
    )
    cfg.architectures = [P["architecture"]]
    model_cls = getattr(transformers, P["architecture"])
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

    # weights: names/shapes from a meta-device model (transformers 5 names == hub names for idefics3 and
    # smolvlm: model.vision_model.*, model.connector.*, model.text_model.*, lm_head.weight)
    with torch.device("meta"):
        meta_model = model_cls(cfg)
    shapes = sorted((n, tuple(p.shape)) for n, p in meta_model.named_parameters())
    del meta_model
    prefixes = ("model.vision_model.", "model.connector.modality_projection.proj.weight", "model.text_model.",
                "lm_head.weight")
    assert all(n.startswith(prefixes) for n, _ in shapes), [n for n, _ in shapes if not n.startswith(prefixes)]
    assert "lm_head.weight" in dict(shapes) and "model.connector.modality_projection.proj.weight" in dict(shapes)
    # EOS-like tokens: lm_head rows exactly 0 -> logit exactly 0 -> never the greedy pick
    zero_rows = {"lm_head.weight": [tid(t) for t in ("<|im_end|>", "<end_of_utterance>", "<|endoftext|>")]}
    write_random_safetensors(os.path.join(out, "model.safetensors"), shapes, args.seed, zero_rows)
    n_params = sum(int(torch.Size(s).numel()) for _, s in shapes)

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
    assert model_class(out) is model_cls
    model, info = model_cls.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} or info.get("error_msgs")
    assert not bad, f"loading info not clean: {info}"
    assert type(model).__name__ == P["architecture"], type(model)
    assert model.config.model_type == P["model_type"] and model.config.scale_factor == P["scale_factor"]
    assert model.model.connector.scale_factor == P["scale_factor"]
    assert not model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() != \
        model.model.text_model.embed_tokens.weight.data_ptr()
    assert float(model.lm_head.weight.detach()[tid("<end_of_utterance>")].abs().max()) == 0.0
    n_loaded = sum(p.numel() for p in model.parameters())
    assert n_loaded == n_params, (n_loaded, n_params)
    text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
    for k, v in TEXT.items():
        got = text_cfg.rope_parameters["rope_theta"] if k == "rope_theta" else getattr(text_cfg, k)
        assert got == v, (k, got, v)
    for k, v in VISION.items():
        assert getattr(vision_cfg, k) == v, (k, getattr(vision_cfg, k), v)
    del model
    proc = transformers.AutoProcessor.from_pretrained(out)
    assert type(proc).__name__ == "Idefics3Processor", type(proc)
    assert proc.image_seq_len == IMAGE_SEQ_LEN
    assert proc.image_processor.size["longest_edge"] == SIZE_LONGEST_EDGE
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert proc.apply_chat_template(msgs, add_generation_prompt=True).endswith("Assistant:")
    image_check = None
    image_path = rel(DEFAULT_IMAGE)
    if os.path.exists(image_path):  # one processor call, as `time` makes it
        from PIL import Image
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
        inputs = proc(images=[Image.open(image_path)], text=prompt, return_tensors="pt")
        pv = inputs["pixel_values"]
        n_img = inputs["input_ids"][0].tolist().count(tid("<image>"))
        assert list(pv.shape[2:]) == [3, MAX_IMAGE_SIZE, MAX_IMAGE_SIZE], pv.shape
        assert n_img == pv.shape[1] * IMAGE_SEQ_LEN, (n_img, pv.shape)
        image_check = {"image": DEFAULT_IMAGE, "pixel_values_shape": list(pv.shape), "image_tokens": n_img,
                       "prompt_tokens": int(inputs["input_ids"].shape[1])}
    summary = {
        "preset": args.preset, "model_type": P["model_type"], "architecture": P["architecture"],
        "dir": out, "seed": args.seed, "parameters": n_params,
        "size_bytes": dir_size(out), "files": sorted(os.listdir(out)),
        "tokenizer_vocab": tok.get_vocab_size(),
        "special_token_ids": {t: tid(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<global-img>",
                                                  "<row_1_col_1>", "<fake_token_around_image>", "<image>",
                                                  "<end_of_utterance>"]},
        "write_s": round(t_write, 2), "total_s": round(time.perf_counter() - t0, 2),
        "reload": f"{P['architecture']} + {type(proc).__name__} ({type(proc.image_processor).__name__})",
        "image_seq_len": IMAGE_SEQ_LEN, "processor_check": image_check,
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
    from transformers import AutoProcessor

    d = rel(args.dir)
    t0 = time.perf_counter()
    model = model_class(d).from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
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

    if args.logits:
        with open(rel(args.logits), "wb") as f:
            f.write(last_logits.detach().to(torch.float32).numpy().astype("<f4").tobytes())
    pv = inputs["pixel_values"]
    ids = inputs["input_ids"][0].tolist()
    image_token_id = model.config.image_token_id
    n_images = int(pv.shape[1])
    decode_steps = NEW_TOKENS - 1
    rnd = lambda xs: [round(x, 4) for x in xs]
    res = {
        "bench": f"{os.path.basename(os.path.normpath(d))}, PyTorch eager, CPU",
        "architecture": type(model).__name__,
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
    m.add_argument("--preset", choices=sorted(PRESETS), default="256m",
                   help="256m: SmolVLM-256M-Instruct (default); 2.2b: SmolVLM2-2.2B-Instruct")
    m.add_argument("--out", default=None, help="default: " + ", ".join(
        f"{p['out']} ({k})" for k, p in PRESETS.items()))
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("time", help="time PyTorch eager generate on CPU")
    t.add_argument("--dir", default=DEFAULT_DIR)
    t.add_argument("--image", default=DEFAULT_IMAGE)
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--json", default=None)
    t.add_argument("--logits", default=None,
                   help="write the prefill's last-position logits (the first step's) there, float32 little-endian")
    args = ap.parse_args()
    if args.cmd == "make":
        torch.set_num_threads(min(2, torch.get_num_threads()))
        cmd_make(args)
    else:
        cmd_time(args)


if __name__ == "__main__":
    main()
