// SPILL_CLIENT_EXPORT marks what libspill_client exports. The library is built
// with hidden visibility so that nothing else it contains (generated protobuf
// code, gRPC glue) can clash with the copies a training process loads from
// LibTorch.
#ifndef SPILL_CLIENT_EXPORT_H_
#define SPILL_CLIENT_EXPORT_H_

#if defined(SPILL_CLIENT_BUILDING)
#define SPILL_CLIENT_EXPORT __attribute__((visibility("default")))
#else
#define SPILL_CLIENT_EXPORT
#endif

#endif  // SPILL_CLIENT_EXPORT_H_
