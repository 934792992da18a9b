/** Every CLI command, in the order `--help` lists them. */
import type { Command } from "../command.js";
import { chatCommand } from "./chat.js";
import { convertCommand } from "./convert.js";
import { generateCommand } from "./generate.js";
import { perplexityCommand } from "./perplexity.js";
import { plotCommand } from "./plot.js";
import { serveCommand } from "./serve.js";

export const COMMANDS: readonly Command[] = [generateCommand, chatCommand, serveCommand, perplexityCommand, plotCommand, convertCommand];
