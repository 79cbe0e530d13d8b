import type { Io } from './io.js';

/** Collects many small writes (map lines) into ~64 KiB writes to the Io. */
export class OutputBuffer {
  private parts: string[] = [];
  private size = 0;

  constructor(
    private readonly io: Io,
    private readonly limit = 64 * 1024,
  ) {}

  write(text: string): void {
    if (text === '') return;
    this.parts.push(text);
    this.size += text.length;
    if (this.size >= this.limit) this.flush();
  }

  flush(): void {
    if (this.parts.length === 0) return;
    this.io.out(this.parts.join(''));
    this.parts = [];
    this.size = 0;
  }
}
