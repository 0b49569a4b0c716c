/* hwai patch runner: patch-based inference (MCUNetV2-style) on stock TensorFlow Lite Micro. The first stage of
   the network runs tile by tile (one int8 model per class of tiles, each computing one tile of the stage output
   from one tile of the image with its halo), then the rest of the network runs as a second model. Every model
   shares one arena; hwai_patch_plan.h (generated) holds its size, measured by TensorFlow Lite Micro. */
#ifndef HWAI_PATCH_RUNNER_H
#define HWAI_PATCH_RUNNER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One tile of the grid: the model that computes it, the rows and columns (half-open) of the input image it reads,
   halo included, and of the stage output it writes. */
typedef struct {
  uint16_t model;
  uint16_t in_y0, in_y1, in_x0, in_x1;
  uint16_t out_y0, out_y1, out_x0, out_x1;
} hwai_patch_tile;

/* Where the application writes the int8 input image (NHWC, quantized with HWAI_PATCH_INPUT_SCALE and
   HWAI_PATCH_INPUT_ZERO_POINT) before each hwai_patch_run. */
int8_t *hwai_patch_input(uint8_t *arena);

/* Runs the tile models over the grid into the stage output, then the rest model, and copies its int8 output
   (HWAI_PATCH_OUTPUT_BYTES) into `output`. `arena`: 16-byte aligned, at least HWAI_PATCH_ARENA_BYTES.
   Returns 0, or a negative code: -1 arena too small, -2 a model's AllocateTensors failed, -3 an Invoke failed. */
int hwai_patch_run(uint8_t *arena, size_t arena_bytes, int8_t *output);

/* The runtime binding (hwai_patch_tflm.cc, over TensorFlow Lite Micro): one model at a time, its interpreter's
   tensors in `region`. open returns 0 when AllocateTensors succeeded. */
int hwai_patch_model_open(int model, uint8_t *region, size_t region_bytes);
int8_t *hwai_patch_model_input(void);
const int8_t *hwai_patch_model_output(void);
int hwai_patch_model_invoke(void);
void hwai_patch_model_close(void);

#ifdef __cplusplus
}
#endif

#endif /* HWAI_PATCH_RUNNER_H */
