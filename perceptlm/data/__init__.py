from perceptlm.data.base import MediaDataset, PerceptionDataModule, UnpaddedDistributedSampler, subset_indices
from perceptlm.data.collate import DEFAULT_TEMPLATES, Collator, Sample
from perceptlm.data.easyvqa import EasyVQADataModule
from perceptlm.data.coco import CocoKarpathyDataModule, TextCapsDataModule
from perceptlm.data.vqa import AOKVQADataModule, OKVQADataModule, TextVQADataModule, VQAv2DataModule
from perceptlm.data.msrvtt import MSRVTTDataModule
from perceptlm.data.synthetic import SynthVideoDataModule
from perceptlm.data.video import VideoDataModule, load_video, sample_frame_indices
from perceptlm.data.audio_captions import AudioCapsDataModule, ClothoDataModule, load_audio
from perceptlm.data.synth_audio import SynthAudioDataModule
from perceptlm.data.instruction import CaptionInstructDataModule, InstructionCollator, InstructionDataModule, captions_to_instructions
from perceptlm.data.easy_instruct import EasyInstructDataModule
from perceptlm.data.llava import LLaVAInstructDataModule
from perceptlm.data.llava_bench import LLaVABenchDataModule
from perceptlm.data.pope import POPEDataModule
from perceptlm.data.scienceqa import ScienceQADataModule
from perceptlm.data.captions import Flickr30kDataModule, NoCapsDataModule

__all__ = ["DEFAULT_TEMPLATES", "Collator", "EasyVQADataModule", "MediaDataset", "PerceptionDataModule",
           "Sample", "UnpaddedDistributedSampler", "subset_indices"]
__all__ += ["MSRVTTDataModule", "SynthVideoDataModule", "VideoDataModule", "load_video", "sample_frame_indices"]
__all__ += ["AOKVQADataModule", "CocoKarpathyDataModule", "OKVQADataModule", "TextCapsDataModule",
            "TextVQADataModule", "VQAv2DataModule"]
__all__ += ["AudioCapsDataModule", "ClothoDataModule", "SynthAudioDataModule", "load_audio"]
__all__ += ["CaptionInstructDataModule", "EasyInstructDataModule", "Flickr30kDataModule", "InstructionCollator",
            "InstructionDataModule", "LLaVABenchDataModule", "LLaVAInstructDataModule", "NoCapsDataModule",
            "POPEDataModule", "ScienceQADataModule", "captions_to_instructions"]
