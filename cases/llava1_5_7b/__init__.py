"""LLaVA-1.5-7B training case: pretrain (ZeRO-2) and finetune (ZeRO-3) as in the A800 reference."""

CASE = "llava1_5_7b"
