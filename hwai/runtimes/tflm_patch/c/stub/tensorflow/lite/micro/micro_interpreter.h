// Declarations only, for a syntax check of hwai_patch_tflm.cc on a host without TensorFlow Lite Micro: the part
// of TFLM's API the binding uses, with TFLM's names and signatures. Build against the real TFLM headers.
#pragma once
#include <cstddef>
#include <cstdint>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef union {
  int8_t *int8;
  void *data;
} TfLitePtrUnion;
typedef struct {
  TfLitePtrUnion data;
} TfLiteTensor;

namespace tflite {
struct Model;
class MicroOpResolver {};
class MicroInterpreter {
 public:
  MicroInterpreter(const Model *model, const MicroOpResolver &op_resolver, uint8_t *tensor_arena,
                   size_t tensor_arena_size);
  ~MicroInterpreter();
  TfLiteStatus AllocateTensors();
  TfLiteStatus Invoke();
  TfLiteTensor *input(size_t index);
  TfLiteTensor *output(size_t index);
};
}  // namespace tflite
