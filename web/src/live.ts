// Live booking-list rows. The stream `GET /bookingLists/stream` (Server-Sent Events) needs the bearer
// token in the Authorization header, which EventSource cannot send, so it is read with fetch and a
// streamed body. While the stream is down the list is polled every 2 s, and the stream is tried again.

import { authHeaders } from './api';

export type Mode = 'stream' | 'polling' | 'stopped';

export interface LiveOptions {
  /** A row changed (from the stream). */
  onRow(row: unknown): void;
  /** Reload everything (after connecting, and on every poll while the stream is down). */
  reload(): Promise<void>;
  onMode(mode: Mode): void;
}

const POLL_MS = 2000;
const RETRY_MS = 5000;

export class LiveRows {
  private abort: AbortController | null = null;
  private pollTimer: number | undefined;
  private retryTimer: number | undefined;
  private lastId: string | null = null;
  private running = false;

  constructor(private opts: LiveOptions) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    void this.opts.reload().catch(() => {});
    void this.connect();
  }

  stop(): void {
    this.running = false;
    this.abort?.abort();
    this.abort = null;
    this.stopPolling();
    window.clearTimeout(this.retryTimer);
    this.opts.onMode('stopped');
  }

  private startPolling(): void {
    if (this.pollTimer !== undefined || !this.running) return;
    this.opts.onMode('polling');
    this.pollTimer = window.setInterval(() => void this.opts.reload().catch(() => {}), POLL_MS);
  }

  private stopPolling(): void {
    window.clearInterval(this.pollTimer);
    this.pollTimer = undefined;
  }

  private async connect(): Promise<void> {
    if (!this.running) return;
    const abort = new AbortController();
    this.abort = abort;
    try {
      const headers: Record<string, string> = { Accept: 'text/event-stream', ...authHeaders() };
      if (this.lastId) headers['Last-Event-ID'] = this.lastId;
      const res = await fetch('/bookingLists/stream', { headers, signal: abort.signal, cache: 'no-store' });
      if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
      await this.read(res.body);
    } catch {
      // fall through: poll and try again
    }
    if (!this.running || abort.signal.aborted) return;
    this.startPolling();
    this.retryTimer = window.setTimeout(() => void this.connect(), RETRY_MS);
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      let cut: number;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        this.dispatch(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
      }
    }
  }

  private dispatch(block: string): void {
    let event = 'message';
    let id: string | null = null;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
    if (id !== null) this.lastId = id;
    if (event === 'ready') {
      // Connected: stop polling and catch up on whatever changed before the stream started.
      this.stopPolling();
      this.opts.onMode('stream');
      void this.opts.reload().catch(() => {});
    } else if (event === 'bookingList' && data.length) {
      try { this.opts.onRow(JSON.parse(data.join('\n'))); } catch { /* ignore a malformed event */ }
    }
  }
}
