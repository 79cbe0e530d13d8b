/**
 * Blob stores hold image data by key. A write goes to a temporary object and becomes visible
 * under its key only on commit (a rename on the filesystem, the completed upload on S3), so a
 * crash or an aborted upload never leaves a partial blob under a real key; `cleanup` removes
 * what a crash left behind.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { ReadSource } from '../../core/host-file.js';

export interface BlobWriter {
  /**
   * Append; resolves when the store has taken the bytes (backpressure). The caller may reuse
   * `chunk` once the promise resolves: a store that keeps data (buffering a part) copies it.
   */
  write(chunk: Buffer): Promise<void>;
  /** Make the blob durable and visible under its key. */
  commit(): Promise<void>;
  /** Drop everything written. */
  abort(): Promise<void>;
}

export interface BlobEntry {
  key: string;
  /** Last written (S3: LastModified, the server's clock; files: mtime). */
  modified: Date;
}

export interface CleanupOptions {
  keep?: (key: string) => boolean;
  before?: Date;
}

export interface BlobStore {
  readonly kind: string;
  create(key: string): Promise<BlobWriter>;
  /** Bytes [start, end] (inclusive) or the whole blob. */
  read(key: string, start?: number, end?: number): Promise<Readable>;
  size(key: string): Promise<number | null>;
  /**
   * Optional, for stores on the local filesystem: the blob's file opened for reading (the
   * caller closes it). Downloads then read it in large blocks into reused buffers instead of
   * going through a stream that allocates a buffer per read.
   */
  openFile?(key: string): Promise<FileHandle>;
  /**
   * The blob for random reads (the engine opens images that live in the store through it:
   * exports, flattens). Throws when the blob does not exist.
   */
  openRandom(key: string): Promise<ReadSource>;
  /** Optional, for stores on the local filesystem: the blob's path (read-only use). */
  localPath?(key: string): string;
  delete(key: string): Promise<void>;
  /** The blobs, with the time each was last written (the orphan collector's age rule). */
  list(): AsyncIterable<BlobEntry>;
  /**
   * Remove temporary objects of uploads that never committed (never those this process is
   * writing); returns how many went. With several nodes on one store, `keep` names the keys
   * a live node may be writing and `before` spares what was written since the caller took its
   * picture of the live writers (see src/server/nodes.ts).
   */
  cleanup(opts?: CleanupOptions): Promise<number>;
  /**
   * Remove the temporary objects of one key (an upload whose node died: the caller has
   * claimed the image, so no live writer can be writing this key); returns how many went.
   */
  abortPending(key: string): Promise<number>;
  close(): Promise<void>;
}
