/* hwai patch runner (see hwai_patch_runner.h). Arena layout, offsets 16-byte aligned:
     while the tiles run:  [stage output | input image | one tile model's arena]
     while the rest runs:  [stage output | the rest model's arena (its input tensor: a copy of the stage output)]
   Tiles are run model by model, so each tile model is allocated once per inference. */
#include <string.h>

#include "hwai_patch_plan.h"
#include "hwai_patch_runner.h"

int8_t *hwai_patch_input(uint8_t *arena) { return (int8_t *)(arena + HWAI_PATCH_STAGE_REGION); }

/* `rows` rows of `bytes` bytes from src (row stride src_stride) to dst (row stride dst_stride). */
static void copy_rows(int8_t *dst, size_t dst_stride, const int8_t *src, size_t src_stride, size_t rows,
                      size_t bytes) {
  for (size_t r = 0; r < rows; ++r) {
    memcpy(dst + r * dst_stride, src + r * src_stride, bytes);
  }
}

/* Runs every tile of model `model`: its input tile copied in from the image, its output tile copied out into the
   stage output. */
static int run_tiles(int model, int8_t *stage, const int8_t *image) {
  const size_t image_stride = (size_t)HWAI_PATCH_INPUT_W * HWAI_PATCH_INPUT_C;
  const size_t stage_stride = (size_t)HWAI_PATCH_STAGE_W * HWAI_PATCH_STAGE_C;
  for (int t = 0; t < HWAI_PATCH_TILES; ++t) {
    const hwai_patch_tile *tile = &hwai_patch_tiles[t];
    if (tile->model != model) {
      continue;
    }
    const size_t in_row = (size_t)(tile->in_x1 - tile->in_x0) * HWAI_PATCH_INPUT_C;
    const int8_t *in = image + (size_t)tile->in_y0 * image_stride + (size_t)tile->in_x0 * HWAI_PATCH_INPUT_C;
    copy_rows(hwai_patch_model_input(), in_row, in, image_stride, (size_t)(tile->in_y1 - tile->in_y0), in_row);
    if (hwai_patch_model_invoke() != 0) {
      return -3;
    }
    const size_t out_row = (size_t)(tile->out_x1 - tile->out_x0) * HWAI_PATCH_STAGE_C;
    int8_t *out = stage + (size_t)tile->out_y0 * stage_stride + (size_t)tile->out_x0 * HWAI_PATCH_STAGE_C;
    copy_rows(out, stage_stride, hwai_patch_model_output(), out_row, (size_t)(tile->out_y1 - tile->out_y0), out_row);
  }
  return 0;
}

int hwai_patch_run(uint8_t *arena, size_t arena_bytes, int8_t *output) {
  if (arena_bytes < HWAI_PATCH_ARENA_BYTES) {
    return -1;
  }
  int8_t *stage = (int8_t *)arena;
  const int8_t *image = hwai_patch_input(arena);
  const size_t fixed = (size_t)HWAI_PATCH_STAGE_REGION + HWAI_PATCH_INPUT_REGION;
  for (int model = 0; model < HWAI_PATCH_TILE_MODELS; ++model) {
    if (hwai_patch_model_open(model, arena + fixed, arena_bytes - fixed) != 0) {
      hwai_patch_model_close();
      return -2;
    }
    const int status = run_tiles(model, stage, image);
    hwai_patch_model_close();
    if (status != 0) {
      return status;
    }
  }
  const size_t rest = HWAI_PATCH_STAGE_REGION;
  if (hwai_patch_model_open(HWAI_PATCH_REST_MODEL, arena + rest, arena_bytes - rest) != 0) {
    hwai_patch_model_close();
    return -2;
  }
  memcpy(hwai_patch_model_input(), stage, HWAI_PATCH_STAGE_BYTES);
  const int status = hwai_patch_model_invoke() != 0 ? -3 : 0;
  if (status == 0) {
    memcpy(output, hwai_patch_model_output(), HWAI_PATCH_OUTPUT_BYTES);
  }
  hwai_patch_model_close();
  return status;
}
