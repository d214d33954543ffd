"""Facts about the embedded SmolLM2 that tests lean on."""

# Every token llama.cpp ends a generation at, as `logit_bias` bans them all: <|endoftext|>, <|im_end|> and
# <reponame> (llama.cpp counts that one as an end too; sampled now and then, it ended answers that tests wanted to
# run to max_tokens or until cancelled).
NO_END_TOKENS = {"0": -100, "2": -100, "4": -100}
