/** Small async locks for in-process serialization. */

/** A mutex: `const release = await m.lock(); try { … } finally { release(); }`. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  lock(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => {
      release = r;
    });
    const prev = this.tail;
    this.tail = prev.then(() => next);
    return prev.then(() => release);
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.lock();
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

/** Many shared holders or one exclusive holder, first come first served. */
export class RwLock {
  private readers = 0;
  private writer = false;
  private queue: { exclusive: boolean; grant: () => void }[] = [];

  shared(): Promise<() => void> {
    return this.acquire(false);
  }

  exclusive(): Promise<() => void> {
    return this.acquire(true);
  }

  private acquire(exclusive: boolean): Promise<() => void> {
    return new Promise((resolve) => {
      this.queue.push({
        exclusive,
        grant: () => resolve(() => this.release(exclusive)),
      });
      this.pump();
    });
  }

  private release(exclusive: boolean): void {
    if (exclusive) this.writer = false;
    else this.readers--;
    this.pump();
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      if (head.exclusive) {
        if (this.writer || this.readers > 0) return;
        this.writer = true;
      } else {
        if (this.writer) return;
        this.readers++;
      }
      this.queue.shift();
      head.grant();
    }
  }
}

/**
 * At most `limit` holders at once, first come first served: `const release = await s.take();
 * try { … } finally { release(); }`. Owned by whoever bounds the work (an image, a writer),
 * never shared through module state.
 */
export class Slots {
  private held = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  async take(): Promise<() => void> {
    while (this.held >= this.limit) await new Promise<void>((resolve) => this.waiters.push(resolve));
    this.held++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held--;
      this.waiters.shift()?.();
    };
  }
}
