/** The `--dtype` and `--device` choices every command that loads a model offers (transformers.js names). */
import type { DataType, DeviceType } from "@huggingface/transformers";

export const DTYPES = ["auto", "fp32", "fp16", "q8", "int8", "uint8", "q4", "bnb4", "q4f16"] as const satisfies readonly DataType[];
export const DEVICES = ["auto", "cpu", "gpu", "cuda", "dml", "coreml", "webgpu", "wasm"] as const satisfies readonly DeviceType[];
