declare module 'seek-bzip' {
  interface OutputStream {
    writeByte(byte: number): void;
  }
  const Bunzip: {
    decode(input: Uint8Array, output?: Uint8Array | number | OutputStream, multistream?: boolean): Buffer;
  };
  export default Bunzip;
}
