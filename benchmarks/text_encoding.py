"""Text encoding of an xlm-roberta-shaped open_clip text tower: the tokenizer's own length against the tower's.

open_clip's ``xlm-roberta-base-ViT-B-32`` configuration pairs an ``HFTextEncoder`` (xlm-roberta-base: 12 layers,
width 768, 12 heads, 514 positions) with open_clip's ``HFTokenizer`` at context length 77. Built offline here: the
xlm-roberta configuration is written to a local folder (random weights, ``hf_model_pretrained: false``) with a local
WordPiece tokenizer (xlm-roberta's own sentencepiece file cannot be downloaded). Timed: ``encode_prompts`` as
gradeclip now tokenizes (open_clip's ``HFTokenizer``: 77 ids per prompt) and as it did before (the unwrapped
transformers tokenizer padded to the tower's 514 positions), medians of --repeats rounds. Ends with a line
``xlm_roberta prompts=K ids_now=77 ids_before=514 now_s=A before_s=B speedup=R``.

    python benchmarks/text_encoding.py [--prompts 8] [--repeats 3] [--vocab 250002]
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gradeclip.backbones.base import backbone_of  # first: gradeclip silences openai-clip's import warning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backbone_models import write_wordpiece_tokenizer  # noqa: E402  (the tests' offline tokenizer)


def xlm_roberta_clip(folder: Path, vocab: int):
    """A CustomTextCLIP with an xlm-roberta-base-shaped HFTextEncoder (random weights) and open_clip's
    HFTokenizer on a local WordPiece vocabulary, context length 77 as open_clip's config gives it."""
    from open_clip.model import CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer
    from transformers import XLMRobertaConfig

    write_wordpiece_tokenizer(folder, model_max_length=512)
    XLMRobertaConfig(vocab_size=vocab, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=514, pad_token_id=0,
                     type_vocab_size=1).save_pretrained(str(folder))
    model = CustomTextCLIP(512, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                           text_cfg={"hf_model_name": str(folder), "hf_tokenizer_name": str(folder),
                                     "hf_model_pretrained": False, "hf_pooler_type": "mean_pooler"}).eval()
    return model, HFTokenizer(str(folder), context_length=77)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=250002, help="xlm-roberta-base: 250002")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = xlm_roberta_clip(Path(tmp), args.vocab)
        prompts = [f"a photo of a dog {i}" if i % 2 else "A photo of a Dog." for i in range(args.prompts)]
        bb = backbone_of(model, tok)
        now = bb.tokenize(prompts)
        before = tok.tokenizer(prompts, padding="max_length", max_length=model.text.context_length,
                               return_tensors="pt")["input_ids"]  # the old path: unwrapped, the tower's length
        with torch.no_grad():
            torch.testing.assert_close(bb.encode_prompts(prompts), model.encode_text(tok(prompts)).float())
            now_s = median_time(lambda: bb.encode_prompts(prompts), args.repeats)
            before_s = median_time(lambda: model.encode_text(before), args.repeats)
    print(json.dumps({"threads": torch.get_num_threads(), "vocab": args.vocab}))
    print(f"xlm_roberta prompts={args.prompts} ids_now={now.shape[1]} ids_before={before.shape[1]} "
          f"now_s={now_s:.3f} before_s={before_s:.3f} speedup={before_s / now_s:.1f}")


if __name__ == "__main__":
    main()
