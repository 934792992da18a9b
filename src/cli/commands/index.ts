/** Every CLI command, in the order `--help` lists them. */
import type { Command } from "../command.js";
import { chatCommand } from "./chat.js";
import { convertCommand } from "./convert.js";
import { generateCommand } from "./generate.js";
import { perplexityCommand } from "./perplexity.js";
import { plotCommand } from "./plot.js";

export const COMMANDS: readonly Command[] = [generateCommand, chatCommand, perplexityCommand, plotCommand, convertCommand];
