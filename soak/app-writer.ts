/**
 * The app writer: writes through the demo's own htmx routes (`POST /todos`,
 * `PATCH /todos/:id`, `DELETE /todos/:id`), as a user of the server-rendered
 * page would, so the soak also has writes that never went through a push:
 * the engine picks them up from the database like any other write.
 *
 * A write counts as acknowledged when its route answered 200. Form posts are
 * not retried (they carry no exactly-once key): one whose answer was lost to
 * a kill is simply unacknowledged.
 */
import type { SoakDatabase } from './database.js';
import type { Ledger, WriteAction } from './ledger.js';
import { type Random, sleep } from './random.js';

export interface AppWriterStats {
  writes: number;
  failures: number;
}

export class AppWriter {
  readonly name = 'app';
  readonly stats: AppWriterStats = { writes: 0, failures: 0 };

  constructor(
    private readonly nodes: ReadonlyArray<{ url: string }>,
    private readonly database: SoakDatabase,
    private readonly ledger: Ledger,
    private readonly random: Random,
    private readonly thinkMs: [number, number] = [200, 1200],
  ) {}

  async run(signal: AbortSignal): Promise<void> {
    let ids: string[] = [];
    while (!signal.aborted) {
      await sleep(this.random.int(this.thinkMs[0], this.thinkMs[1]), signal);
      if (signal.aborted) break;
      // The ids a user would see on the page (read straight from the database).
      if (ids.length === 0 || this.random.chance(0.3)) ids = (await this.database.rows().catch(() => [])).map((row) => row.id);
      const roll = this.random.next();
      let action: WriteAction = 'create';
      let id: string | null = null;
      if (ids.length > 0 && roll > 0.4) {
        id = this.random.pick(ids) as string;
        action = roll > 0.8 ? 'delete' : 'update';
      }
      await this.write(action, id, signal);
    }
  }

  private async write(action: WriteAction, id: string | null, signal: AbortSignal): Promise<void> {
    const tag = this.ledger.nextTag(this.name);
    const record = this.ledger.issue({ participant: this.name, kind: 'app', tag, id, action, mutationId: null });
    const node = this.random.pick(this.nodes) as { url: string };
    const path = id === null ? '/todos' : `/todos/${encodeURIComponent(id)}`;
    const method = action === 'create' ? 'POST' : action === 'update' ? 'PATCH' : 'DELETE';
    const body =
      action === 'delete'
        ? undefined
        : new URLSearchParams(action === 'create' ? { title: tag } : { title: tag, done: String(this.random.chance(0.5)) });
    this.stats.writes++;
    try {
      const response = await fetch(`${node.url}${path}`, {
        method,
        body,
        headers: { 'hx-request': 'true' },
        signal: AbortSignal.any([signal, AbortSignal.timeout(10_000)]),
      });
      await response.arrayBuffer();
      if (response.status === 200) record.answers.push({ status: 'applied', duplicate: false });
      // 404: the row was deleted meanwhile (PATCH); anything else is a refusal too.
      else record.answers.push({ status: 'rejected', duplicate: false });
    } catch {
      // Killed mid-request or aborted: the write may or may not have happened; nobody was told.
      this.stats.failures++;
    }
  }
}
