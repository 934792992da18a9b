/**
 * The contract between the package and its own exports for a KV cache written in place.
 *
 * The transformers.js contract makes every step return the whole cache (`present` = past + new), which copies
 * the cache once per token. A graph that declares the output NEW_KV_ONLY_OUTPUT also accepts an
 * attention_mask whose new-token columns hold NEW_TOKEN_MASK_VALUE instead of 1: it then returns as
 * `present.*` only the new tokens' keys and values, and the caller writes them into buffers of a fixed size
 * that it feeds back as the past, with the mask selecting the slots attended. transformers.js feeds 0/1
 * masks only, so to it the graph is an ordinary decoder.
 */
export const NEW_KV_ONLY_OUTPUT = "attention_sinks.new_kv_only";

/** The mask value of a new token whose keys and values alone should be returned. */
export const NEW_TOKEN_MASK_VALUE = 2;
