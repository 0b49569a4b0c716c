// Declarations only (see ../micro/micro_interpreter.h): GetModel reads a .tflite flatbuffer in place.
#pragma once
#include "tensorflow/lite/micro/micro_interpreter.h"

namespace tflite {
const Model *GetModel(const void *buf);
}  // namespace tflite
