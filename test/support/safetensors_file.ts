/** Writes safetensors files for conversion tests (the format's reader is src/convert/safetensors.ts). */
import type { WeightTensor } from "../../src/architecture/decoder_spec.js";

/** A safetensors file of `tensors` stored as `dtype` (BF16 truncates each float32 to its top 16 bits). */
export function safetensorsFile(tensors: readonly (readonly [string, WeightTensor])[], dtype: "F32" | "BF16" | "I32"): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const data: Uint8Array[] = [];
  let offset = 0;
  for (const [name, tensor] of tensors) {
    const values = tensor.data.slice();
    const bytes =
      dtype === "BF16"
        ? new Uint8Array(Uint16Array.from(new Uint32Array(values.buffer), (bits) => bits >>> 16).buffer)
        : new Uint8Array(values.buffer);
    header[name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes.length] };
    data.push(bytes);
    offset += bytes.length;
  }
  const text = JSON.stringify(header);
  const json = new TextEncoder().encode(text.padEnd(Math.ceil(text.length / 8) * 8));
  const length = new Uint8Array(8);
  new DataView(length.buffer).setBigUint64(0, BigInt(json.length), true);
  return Buffer.concat([length, json, ...data]);
}
