// hwai patch runner's runtime binding over TensorFlow Lite Micro (see hwai_patch_runner.h): one interpreter at a
// time, built in the region of the arena the runner hands it, so every model shares the runner's one arena.
#include <new>

#include "hwai_patch_models.h"
#include "hwai_patch_runner.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {

using Resolver = tflite::MicroMutableOpResolver<HWAI_PATCH_OP_COUNT>;

Resolver &resolver() {
  static Resolver ops;
  static bool ready = false;
  if (!ready) {
    HWAI_PATCH_ADD_OPS(ops);
    ready = true;
  }
  return ops;
}

alignas(tflite::MicroInterpreter) unsigned char storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter *current = nullptr;

}  // namespace

extern "C" int hwai_patch_model_open(int model, uint8_t *region, size_t region_bytes) {
  hwai_patch_model_close();
  current = new (storage) tflite::MicroInterpreter(tflite::GetModel(hwai_patch_model_data[model]), resolver(),
                                                   region, region_bytes);
  return current->AllocateTensors() == kTfLiteOk ? 0 : -1;
}

extern "C" int8_t *hwai_patch_model_input(void) { return current->input(0)->data.int8; }

extern "C" const int8_t *hwai_patch_model_output(void) { return current->output(0)->data.int8; }

extern "C" int hwai_patch_model_invoke(void) { return current->Invoke() == kTfLiteOk ? 0 : -1; }

extern "C" void hwai_patch_model_close(void) {
  if (current != nullptr) {
    current->~MicroInterpreter();
    current = nullptr;
  }
}
