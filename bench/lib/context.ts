/** What every suite gets from the orchestrator, and what it hands back. */
import type { Worker } from './proc.js';

export interface BenchContext {
  quick: boolean;
  /** The two long-lived client processes. */
  clients: [Worker, Worker];
  /** Hard fd limit: client counts above it are scaled down and reported. */
  fdHard: number;
  log(message: string): void;
}

/** A goal from the issue, checked against a ratio measured in the same run. */
export interface Target {
  what: string;
  /** The measured ratio. */
  ratio: number;
  /** What the table shows instead of the ratio, when the goal is not a ratio (e.g. `+0.3 ms/s`). */
  measured?: string;
  /** e.g. "≤ 1.5× raw ws p99". */
  goal: string;
  met: boolean;
}

export interface SuiteResult {
  id: string;
  title: string;
  /** How it was measured, in one or two sentences (goes above the table). */
  method: string;
  table: { columns: string[]; rows: Array<Array<string | number>> };
  /** More tables under the first one. */
  extraTables?: Array<{ title: string; columns: string[]; rows: Array<Array<string | number>> }>;
  targets?: Target[];
  notes?: string[];
  /** Things this run could not measure yet, said plainly. */
  todo?: string[];
  /** Everything measured, for bench/results/latest.json. */
  data: unknown;
}

/** Format a ratio for tables: `0.93×`. */
export const times = (ratio: number): string => (Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : 'n/a');

/** Format milliseconds for tables. */
export const ms = (value: number): string =>
  !Number.isFinite(value) ? 'n/a' : value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);

/** Format a rate for tables: `123,000`. */
export const rate = (value: number): string => (Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a');

export const bytes = (value: number): string =>
  value >= 1024 * 1024 ? `${(value / 1024 / 1024).toFixed(2)} MiB` : value >= 1024 ? `${(value / 1024).toFixed(1)} KiB` : `${value} B`;
