// Internal to the config reader (config.cc, config_resolve.cc).
#ifndef SPILL_WORKER_CONFIG_INTERNAL_H_
#define SPILL_WORKER_CONFIG_INTERNAL_H_

#include "absl/status/status.h"
#include "worker/config.h"
#include "worker/config_reader.h"

namespace spill::worker::internal {

// optimizer.params.betas: "auto" or two numbers in [0, 1).
absl::Status ReadBetas(Section& params, OptimizerConfig* c);
// The apex "amp" block: loads with "auto" or false; true is an error.
absl::Status ReadAmp(Section& root);
// Top-level DeepSpeed features spill-train does not implement.
void NoteUnsupportedRootKeys(Section& root);
// Fills "auto" values from args (HF rules), checks file values against
// explicitly given arguments, derives and checks the batch sizes.
// InvalidArgument naming the keys (and all conflicts at once).
absl::Status ResolveAutoValues(const ReadContext& ctx, const TrainingArgs& args,
                               DeepSpeedConfig* c);

}  // namespace spill::worker::internal

#endif  // SPILL_WORKER_CONFIG_INTERNAL_H_
